"""The Telegram frontend: the application, its handlers, the /settings text and job replies."""
