#!/usr/bin/env python3
"""A real SMTP server (aiosmtpd) for dunningd's tests.

Recipients whose local part starts with "reject" are refused with a 5xx,
those starting with "defer" with a 4xx; every accepted message is parsed
with Python's email package and written as JSON (envelope, headers, parts)
to --out. Prints "ready" once listening; exits when stdin closes, so it
never outlives the test that started it.
"""
import argparse
import email
import email.policy
import json
import os
import sys

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, out):
        self.out = out
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0]
        if local.startswith("reject"):
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        if local.startswith("defer"):
            return "451 4.7.1 <%s>: greylisted, try again later" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        parts = {}
        for part in message.walk():
            if part.get_content_maintype() != "multipart":
                parts[part.get_content_type()] = part.get_content()
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "headers": {name: str(value) for name, value in message.items()},
            "parts": parts,
        }
        path = os.path.join(self.out, "%04d.json" % self.count)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)
        return "250 2.0.0 Ok: queued as Q%04d" % self.count


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    controller = Controller(Handler(args.out), hostname="127.0.0.1", port=args.port)
    controller.start()
    print("ready", flush=True)
    sys.stdin.read()
    controller.stop()


if __name__ == "__main__":
    main()
