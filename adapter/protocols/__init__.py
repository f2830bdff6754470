"""Sans-I/O wire protocols: bytes in, requests out; replies in, bytes out. No sockets here."""
