"""The bad-input corpus of issue 12 (see ``make.py``), read by ``tests/test_bad_input_corpus.py``."""
