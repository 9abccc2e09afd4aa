"""``fspo study``: a browser human study of personalized vs baseline answers (docs/study.md)."""
