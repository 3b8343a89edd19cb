"""The reading side: one round of reading per ``step(client)``: what readers share (base), group and tracker mode
(group, tracker), pausing for a full queue (backpressure)."""
