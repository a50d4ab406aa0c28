#!/usr/bin/env python3
"""Writes the hand-made seed inputs in fuzz/seeds/: whole client byte streams, MQTT 3.1.1
and 5, valid ones and ones that break a rule. Both targets start from them; the session
target's regression test also checks the reason code named in each file name (v5-close81-...).

Written by hand rather than with the codec's encoder so the seeds do not share its bugs.
Run from the repository root: python3 fuzz/make_seeds.py
"""

import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(text):
    data = text.encode() if isinstance(text, str) else text
    return struct.pack(">H", len(data)) + data


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def props(*items):
    body = b"".join(items)
    return varint(len(body)) + body


# MQTT 5 properties used below.
def p_session_expiry(n):
    return b"\x11" + struct.pack(">I", n)


def p_receive_max(n):
    return b"\x21" + struct.pack(">H", n)


def p_max_packet(n):
    return b"\x27" + struct.pack(">I", n)


def p_alias_max(n):
    return b"\x22" + struct.pack(">H", n)


def p_alias(n):
    return b"\x23" + struct.pack(">H", n)


def p_expiry(n):
    return b"\x02" + struct.pack(">I", n)


def p_user(k, v):
    return b"\x26" + s(k) + s(v)


def p_sub_id(n):
    return b"\x0b" + varint(n)


def p_will_delay(n):
    return b"\x18" + struct.pack(">I", n)


def p_utf8():
    return b"\x01\x01"


def p_content_type(t):
    return b"\x03" + s(t)


def p_response_topic(t):
    return b"\x08" + s(t)


def p_correlation(d):
    return b"\x09" + s(d)


def p_auth_method(m):
    return b"\x15" + s(m)


def connect(v5, client_id, clean=True, keep_alive=30, will=None, user=None, password=None,
            connect_props=b"", will_props=b"", level=None):
    flags = 0x02 if clean else 0
    payload = s(client_id)
    if will:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        if v5:
            payload += props(will_props)
        payload += s(topic) + s(message)
    if user is not None:
        flags |= 0x80
        payload += s(user)
    if password is not None:
        flags |= 0x40
        payload += s(password)
    if level is None:
        level = 5 if v5 else 4
    name = s("MQIsdp") if level == 3 else s("MQTT")
    body = name + bytes([level, flags]) + struct.pack(">H", keep_alive)
    if v5:
        body += props(connect_props)
    return packet(0x10, body + payload)


def publish(v5, topic, payload, qos=0, pid=None, retain=False, dup=False, publish_props=b""):
    first = 0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    body = s(topic)
    if qos:
        body += struct.pack(">H", pid)
    if v5:
        body += props(publish_props)
    return packet(first, body + payload)


def subscribe(v5, pid, filters, sub_props=b""):
    body = struct.pack(">H", pid)
    if v5:
        body += props(sub_props)
    for f, options in filters:
        body += s(f) + bytes([options])
    return packet(0x82, body)


def unsubscribe(v5, pid, filters):
    body = struct.pack(">H", pid)
    if v5:
        body += props()
    for f in filters:
        body += s(f)
    return packet(0xA2, body)


def ack(kind, pid):
    first = {"puback": 0x40, "pubrec": 0x50, "pubrel": 0x62, "pubcomp": 0x70}[kind]
    return packet(first, struct.pack(">H", pid))


PING = b"\xc0\x00"


def disconnect(v5, reason=None, disconnect_props=b""):
    if not v5 or reason is None:
        return b"\xe0\x00"
    return packet(0xE0, bytes([reason]) + props(disconnect_props))


def qos_flow(v5):
    """Every client packet of a normal conversation: QoS 0/1/2 in, QoS 1/2 out with acks."""
    return (
        subscribe(v5, 1, [("race/#", 2)])
        + publish(v5, "race/alice", b"lat=1,lon=2")
        + publish(v5, "race/alice", b"q1", qos=1, pid=2)
        + publish(v5, "race/bob", b"q2", qos=2, pid=3)
        + ack("pubrel", 3)
        # The broker's deliveries of the two above are its packet ids 1 and 2.
        + ack("puback", 1)
        + ack("pubrec", 2)
        + ack("pubcomp", 2)
        + PING
        + unsubscribe(v5, 4, ["race/#"])
        + disconnect(v5)
    )


def seeds():
    for v5 in (False, True):
        v = "v5" if v5 else "v3"
        yield f"{v}-connect-disconnect", connect(v5, "alice") + PING + disconnect(v5)
        yield f"{v}-qos-flow", connect(v5, "alice") + qos_flow(v5)
        yield f"{v}-persistent-will-retained", (
            connect(v5, "carol", clean=False, will=("status/carol", b"gone", 1, True),
                    connect_props=p_session_expiry(600) if v5 else b"",
                    will_props=p_will_delay(5) if v5 else b"")
            + publish(v5, "status/carol", b"here", qos=1, pid=1, retain=True)
            + subscribe(v5, 2, [("status/+", 1), ("$share/g/race/#", 0), ("denied/x", 0)])
            + publish(v5, "status/carol", b"", qos=0, retain=True)
        )
        yield f"{v}-user-empty-id", connect(v5, "", user="dave", password=b"pw") + PING + disconnect(v5)
        yield f"{v}-refused-publishes", (
            connect(v5, "erin")
            + publish(v5, "secret/x", b"no", qos=1, pid=1)
            + publish(v5, "full/x", b"no", qos=2, pid=2)
            + publish(v5, "fail/x", b"no", qos=1, pid=3)
            + subscribe(v5, 4, [("secret/#", 1), ("a/#/b", 0)])
            + disconnect(v5)
        )
        yield f"{v}-dup-qos2", (
            connect(v5, "frank")
            + publish(v5, "race/x", b"a", qos=2, pid=7)
            + publish(v5, "race/x", b"a", qos=2, pid=7, dup=True)
            + ack("pubrel", 7)
            + disconnect(v5)
        )
    yield "v31-mqisdp", connect(False, "old", level=3) + publish(False, "a/b", b"x", qos=1, pid=1) + disconnect(False)
    yield "v5-properties", (
        connect(True, "gina", connect_props=p_session_expiry(60) + p_receive_max(2) + p_max_packet(512)
                + p_alias_max(3) + p_user("k", "v"))
        + subscribe(True, 1, [("props/#", 0x2E)], sub_props=p_sub_id(7))  # qos 2, no local, rap, rh 2
        + subscribe(True, 2, [("props/echo", 0x01)])
        + publish(True, "props/a", b"{}", qos=1, pid=3,
                  publish_props=p_alias(2) + p_expiry(30) + p_utf8() + p_content_type("application/json")
                  + p_response_topic("props/reply") + p_correlation(b"c1") + p_user("x", "y"))
        + publish(True, "", b"again", qos=1, pid=4, publish_props=p_alias(2))
        + publish(True, "props/echo", b"e" * 600)
        + disconnect(True, 0x04, p_session_expiry(0))
    )
    yield "v5-will-on-abnormal-close", connect(True, "hank", will=("status/hank", b"lost", 2, False),
                                                 will_props=p_expiry(10) + p_utf8())
    # Ones that break a rule; the reason the broker must close with is in the name.
    hello = connect(True, "ivan")
    yield "v5-close81-garbage-after-connect", hello + b"\x00\x01\x02\x03"
    yield "v5-close81-qos3-publish", hello + packet(0x36, s("a/b") + b"\x00\x01\x00x")
    yield "v5-close81-bad-utf8-topic", hello + packet(0x30, s(b"a\xff") + b"\x00x")
    yield "v5-close81-bad-flags-puback", hello + packet(0x41, b"\x00\x01")
    yield "v5-close82-second-connect", hello + connect(True, "ivan")
    yield "v5-close82-auth", hello + packet(0xF0, b"\x00")
    yield "v5-close82-empty-subscribe", hello + packet(0x82, b"\x00\x01\x00")
    yield "v5-close82-unset-alias", hello + publish(True, "", b"x", publish_props=p_alias(1))
    yield "v5-close90-wildcard-topic", hello + publish(True, "a/+", b"x")
    yield "v5-close93-receive-maximum", hello + b"".join(
        publish(True, "race/x", b"x", qos=1, pid=i) for i in range(1, 11))
    yield "v5-close94-alias-too-big", hello + publish(True, "a", b"x", publish_props=p_alias(5))
    yield "v5-close95-too-large", hello + b"\x30\xff\xff\xff\x07"
    yield "v5-close81-broken-length", hello + b"\x30\xff\xff\xff\xff\x01"
    # A CONNECT that does not decode: MQTT 5 clients get a CONNACK saying why.
    yield "v5-connack81-will-qos3", connect(True, "x", will=("w", b"m", 3, False))
    yield "v5-connack81-bad-utf8-client-id", connect(True, b"\xc3\x28")
    yield "v5-connack95-huge-connect", b"\x10\xff\xff\xff\x07\x00\x04MQTT\x05\x02\x00\x00"
    yield "v3-garbage-after-connect", connect(False, "ivan") + b"\x00\x01\x02\x03"
    yield "v3-second-connect", connect(False, "ivan") + connect(False, "ivan")
    yield "v3-fail-publish", connect(False, "ivan") + publish(False, "fail/x", b"x", qos=1, pid=1)
    yield "v5-auth-method-refused", connect(True, "jo", connect_props=p_auth_method("SCRAM-SHA-1"))
    yield "v3-empty-id-persistent-refused", connect(False, "", clean=False)
    yield "not-mqtt", b"GET / HTTP/1.1\r\n\r\n"
    yield "bad-protocol-level", connect(False, "x", level=9)


def main():
    os.makedirs(ROOT, exist_ok=True)
    for old in os.listdir(ROOT):
        os.remove(os.path.join(ROOT, old))
    count = 0
    for name, data in seeds():
        with open(os.path.join(ROOT, name), "wb") as f:
            f.write(data)
        count += 1
    print(f"{count} seeds in {ROOT}")


if __name__ == "__main__":
    main()
