"""Prepare: load support data, turn it into exchanges, scrub personal data, fill placeholders, split it leak-free, write the data card."""
