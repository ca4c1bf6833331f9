"""Sans-IO contract protocol: wire messages, reliable control channel, contract state
machine, and the gateway/client negotiation + enforcement engines.

No I/O, no clock, no randomness: ``now``, ids and epochs are parameters; outputs are
returned (take_outgoing / take_released / take_events, channel.poll).
"""

from tunnelgate.protocol.channel import Channel, ChannelFull
from tunnelgate.protocol.client import ClientEngine, ClientPolicy
from tunnelgate.protocol.contract import Contract, Ev, Event, State, TransitionError
from tunnelgate.protocol.gateway import GatewayEngine, Pricing
from tunnelgate.protocol.messages import Message, ProtocolError, decode, encode

__all__ = ["Channel", "ChannelFull", "ClientEngine", "ClientPolicy", "Contract", "Ev", "Event",
           "State", "TransitionError", "GatewayEngine", "Pricing", "Message", "ProtocolError",
           "decode", "encode"]
