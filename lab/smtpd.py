"""SMTP backend (aiosmtpd): accepts every message into a maildir the scenarios read."""

import asyncio
import mailbox
import threading

from aiosmtpd.smtp import SMTP


class _MaildirHandler:
    def __init__(self, maildir, seen):
        self.maildir = mailbox.Maildir(maildir, create=True)
        self.seen = seen

    async def handle_DATA(self, server, session, envelope):
        message = envelope.original_content or envelope.content
        key = self.maildir.add(b"X-Lab-Backend: " + self.seen.server.encode() + b"\r\n" + message)
        self.seen.record("smtp", session.peer[0], mail_from=envelope.mail_from,
                         rcpt_tos=envelope.rcpt_tos, key=key)
        return "250 Message accepted for delivery"


def serve_smtp(host, port, maildir, seen):
    """Run an SMTP server on its own asyncio loop in a daemon thread."""
    handler = _MaildirHandler(maildir, seen)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(loop.create_server(
            lambda: SMTP(handler, hostname=seen.server), host, port))
        loop.server = server
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True, name="smtp").start()
    ready.wait(10)
    return loop
