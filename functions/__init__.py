"""Lambda functions of the checkout saga, one folder each."""
