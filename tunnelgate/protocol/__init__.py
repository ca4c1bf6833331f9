"""Sans-IO contract protocol: wire messages, reliable control channel, the contract state
machine and lifecycle, and the two roles built on it: the seller (proposes, holds, grants
grace, verifies) and the buyer (accepts, counters, budgets, renews, pays), each for many
counterparts.

No I/O, no clock, no randomness: ``now``, ids and epochs are parameters; outputs are
returned (take_outgoing / take_released / take_events, channel.poll).
"""

from tunnelgate.protocol.buyer import Buyer, ClientPolicy
from tunnelgate.protocol.channel import Channel, ChannelFull
from tunnelgate.protocol.contract import Contract, Ev, State, TransitionError
from tunnelgate.protocol.events import ContractEvent
from tunnelgate.protocol.messages import Message, ProtocolError, decode, encode
from tunnelgate.protocol.seller import Pricing, Seller
from tunnelgate.protocol.terms import Terms

__all__ = ["Buyer", "Channel", "ChannelFull", "ClientPolicy", "Contract", "ContractEvent", "Ev", "State",
           "Terms", "TransitionError", "Seller", "Pricing", "Message", "ProtocolError", "decode", "encode"]
