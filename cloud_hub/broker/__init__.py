"""The hub's MQTT link to its brokers, shared by ingest (subscribe) and the desired-state writer (publish)."""

from cloud_hub.broker.link import BrokerLink
from cloud_hub.broker.links import BrokerLinks
from cloud_hub.broker.url import AuthenticationFailed, BrokerLinkError, BrokerUrl

__all__ = ["AuthenticationFailed", "BrokerLink", "BrokerLinkError", "BrokerLinks", "BrokerUrl"]
