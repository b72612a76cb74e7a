"""Fact slots: company facts from a profile, customer facts from the conversation, never from the weights."""
