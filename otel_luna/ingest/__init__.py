"""The one way in: SDK and OTLP data → typed records → mapping → encoding → delivery."""
