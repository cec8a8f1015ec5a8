// Lints the status page script (modelbus/ingress/status_page/app.js): a browser ES module, no build step.
// The script lies outside this directory, which ESLint will not lint, so `just lint` passes it on stdin as
// status_page/app.js: `npx eslint --config eslint.config.js --stdin --stdin-filename status_page/app.js`.
import js from "@eslint/js";
import globals from "globals";

export default [
  {
    files: ["status_page/**/*.js"],
    ...js.configs.recommended,
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: "module",
      globals: { ...globals.browser },
    },
    linterOptions: { reportUnusedDisableDirectives: "error" },
    rules: {
      ...js.configs.recommended.rules,
      eqeqeq: ["error", "always"],
      "no-var": "error",
      "prefer-const": "error",
      "no-implicit-globals": "error",
      "no-eval": "error",
      "no-implied-eval": "error",
      "no-new-func": "error",
      "no-shadow": "error",
      "no-unused-vars": ["error", { args: "after-used", caughtErrors: "none" }],
      "no-console": ["error", { allow: ["warn", "error"] }],
      "no-restricted-syntax": [
        "error",
        {
          selector: "MemberExpression[property.name=/^(innerHTML|outerHTML)$/]",
          message: "Write data with textContent or DOM nodes, never as HTML.",
        },
        {
          selector: "CallExpression[callee.property.name=/^(insertAdjacentHTML|write|writeln)$/]",
          message: "Write data with textContent or DOM nodes, never as HTML.",
        },
      ],
    },
  },
];
