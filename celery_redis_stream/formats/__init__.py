"""Wire formats of other producers that the bridge decodes (``decode: "faststream"``)."""
