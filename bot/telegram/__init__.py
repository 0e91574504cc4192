"""The Telegram frontend: command, message and button handlers, and status/photo replies."""
