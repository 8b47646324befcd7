"""Spans and samples → points of a profile's series. Pure: data in, data out."""
