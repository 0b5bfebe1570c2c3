"""Radiology text tools: the phantom report grammar, a CheXpert-style labeler, tokenizer and vocabulary."""
