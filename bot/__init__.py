"""aidraw's chat frontends, parser and launcher."""
