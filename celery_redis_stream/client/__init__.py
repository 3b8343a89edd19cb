"""The Redis seam: connecting and sorting errors (connection), the stream commands (streams), many cluster slots
from one thread (cluster), the reader's reply parser (parser), and FastStream's message formats (faststream)."""
