"""mvclip's built-in blocks. Importing this package registers them."""
