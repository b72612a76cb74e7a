"""Serving: the assistant behind the Gradio app and its OpenAI-compatible API."""
