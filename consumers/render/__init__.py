"""``metadns render``: JSON templates whose server tokens are kept expanded to live addresses."""
