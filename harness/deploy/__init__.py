"""Deployment: merge the adapter and export CTranslate2 models, and the runtime that serves them."""
