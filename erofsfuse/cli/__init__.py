"""The commands: ``erofsfuse`` (mount), ``erofstool`` (inspect, extract, check) and the sample."""
