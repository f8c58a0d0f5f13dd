"""The thin framework layer: Faust app, topics, table, agents and sinks wiring the pure scorers."""
