"""SIP Connect: digest authentication and the SIP credentials of API keys."""
