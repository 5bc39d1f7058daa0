"""SIP Connect: trunks and softphones call rooms at ``sip:<roomId>@<domain>``."""
