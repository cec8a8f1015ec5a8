"""NSQL evaluation: business questions with gold SQL, asked over ``POST /v1/nsql`` and scored by result.

``questions.yaml`` holds the questions, ``score`` the pure comparison of a generated result with the gold
one, and ``python -m evals.nsql`` (``just eval-nsql``) runs them against a live system.
"""
