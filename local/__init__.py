"""The no-Docker local stack: fake providers and the pieces that run the system on 127.0.0.1."""
