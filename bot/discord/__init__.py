"""The Discord frontend: the bot client, the /draw and admin cogs, job buttons and replies."""
