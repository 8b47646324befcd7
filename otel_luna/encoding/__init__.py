"""Points → bytes on the wire: InfluxDB line protocol and Ping Centre JSON. Pure."""
