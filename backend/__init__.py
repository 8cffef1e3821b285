"""Label Studio ML backend package: request handling, brush RLE codec and session state."""
