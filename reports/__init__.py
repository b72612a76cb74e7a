"""Jinja2 HTML and Markdown reports and the leaderboard."""
