"""reshard's connector templates and the POMs of its JVM half, shipped as package data
(``reshard.connectors``) and read with importlib.resources, never from a source checkout."""
