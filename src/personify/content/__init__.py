"""The content catalog: items (banners, articles, products, offers…) with their versions,
placements, and the webhooks told when an item is published or unpublished (docs/content.md)."""
