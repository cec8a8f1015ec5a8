# modelbus recipes. Everything runs from the venv that ./run bootstraps (./run just <recipe> makes sure of it).

set shell := ["bash", "-cu"]
set positional-arguments := true

venv := justfile_directory() / ".venv" / "bin"

# list the recipes
[private]
default:
    @{{ just_executable() }} --justfile {{ justfile() }} --list

[group('run')]
[doc('bring the system up on the embedded defaults (args go to modelbus up)')]
up *args:
    {{ venv }}/modelbus up "$@"

[group('run')]
[doc('fetch and verify the local model files the config uses')]
pull *args:
    {{ venv }}/modelbus models pull "$@"

[group('check')]
[doc('run the test suite (args go to pytest)')]
test *args:
    {{ venv }}/pytest "$@"

[group('check')]
[doc('formatting and lint (ruff; the status page with eslint and html-validate)')]
lint:
    {{ venv }}/ruff format --check .
    {{ venv }}/ruff check .
    cd tests/js && npx --no-install eslint --config eslint.config.js --max-warnings 0 --stdin --stdin-filename status_page/app.js < ../../modelbus/ingress/status_page/app.js
    cd tests/js && npx --no-install html-validate --config .htmlvalidate.json ../../modelbus/ingress/status_page/index.html

[group('check')]
[doc('type check (mypy, strict as configured in pyproject.toml)')]
types:
    {{ venv }}/mypy

[group('check')]
[doc('lint, types and tests')]
check: lint types test

[group('dev')]
[doc('format the code and apply the safe lint fixes')]
fmt:
    {{ venv }}/ruff format .
    {{ venv }}/ruff check --fix .

[group('check')]
[doc('benchmarks: the gateway (chat, streams, listings; straight to a fast stand-in and through modelbus up, with wrk when installed; CPU per request and RSS of every process); NSQL outside the model; local generation, raw llama-server and through modelbus; local embeddings, raw engine and through modelbus (--seconds, --tokens, --concurrency, --rounds)')]
bench *args:
    {{ venv }}/python -m tests.bench "$@"

[group('check')]
[doc('NSQL evaluation: ask evals/nsql/questions.yaml over POST /v1/nsql of a running system and score the answers (--base-url, --split dev|test|all, --model, --group, --concurrency, --json FILE, --check-gold; --chat: the same questions to a tools model over chat)')]
eval-nsql *args:
    {{ venv }}/python -m evals.nsql "$@"

[group('dev')]
[doc('re-pin requirements/*.txt from the *.in files and the installed venv')]
lock:
    {{ venv }}/python requirements/lock.py

[group('check')]
[doc('soak: a mixed load (chat, streams, NSQL, listings) against every process; --minutes (10), --seconds, --concurrency (16)')]
soak *args:
    {{ venv }}/python -m tests.bench.soak "$@"
