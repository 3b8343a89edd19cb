"""Positions: the delivery rule (rule: commit only after publish), one type per mode (group, tracker), the tracker
lease (lease) and the lag of a position (lag)."""
