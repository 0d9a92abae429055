# A transparent proxy in the style of a mesh sidecar, for tests/relay_mesh.rs:
# connections captured to port 15001 (outbound) go to their original
# destination (SO_ORIGINAL_DST); those captured to 15006 (inbound) go to
# 127.0.0.1:<original port>. One log line per connection: the direction, the
# original destination and the downstream peer.
import socket
import struct
import sys
import threading

SO_ORIGINAL_DST = 80
log = open(sys.argv[1], "a", buffering=1)
lock = threading.Lock()


def note(line):
    with lock:
        log.write(line + "\n")


def original_dst(conn):
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    (port,) = struct.unpack("!H", raw[2:4])
    return socket.inet_ntoa(raw[4:8]), port


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def handle(conn, inbound):
    orig = original_dst(conn)
    kind = "in" if inbound else "out"
    if orig is None:
        note(f"{kind} no-original-destination")
        conn.close()
        return
    note(f"{kind} {orig[0]}:{orig[1]} from {conn.getpeername()[0]}")
    target = ("127.0.0.1", orig[1]) if inbound else orig
    try:
        up = socket.create_connection(target, timeout=5)
    except OSError as e:
        note(f"{kind} connect {target[0]}:{target[1]} failed: {e}")
        conn.close()
        return
    back = threading.Thread(target=pump, args=(up, conn), daemon=True)
    back.start()
    pump(conn, up)
    back.join()
    up.close()
    conn.close()


def serve(port, inbound):
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("0.0.0.0", port))
    lst.listen(64)
    while True:
        conn, _ = lst.accept()
        threading.Thread(target=handle, args=(conn, inbound), daemon=True).start()


threading.Thread(target=serve, args=(15006, True), daemon=True).start()
serve(15001, False)
