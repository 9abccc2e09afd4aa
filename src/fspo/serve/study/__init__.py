"""``fspo study``: a browser human study of personalized vs baseline answers (DESIGN.md, issue 6)."""
