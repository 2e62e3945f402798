"""A spa-client profile that knocks a loopback UDP sink: a server made with
`spa-server init` in directory D, its card pointing at the sink, and a client key in
D/me.spa. Shared by bench/client.sh and bench/fwknop.sh (run from the repository root)."""
import os, socket, subprocess

CLIENT = os.path.abspath("target/release/spa-client")
SERVER = os.path.abspath("target/release/spa-server")


def loopback_profile(d):
    """Returns (profile path, sink socket, sink port); the profile's server is named `lo`."""
    etc = os.path.join(d, "etc")
    subprocess.run([SERVER, "init", "--dir", etc, "--port", "23456"], check=True, stdout=subprocess.DEVNULL)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    card = subprocess.run([SERVER, "--config", os.path.join(etc, "server.toml"), "card", "--endpoint", f"127.0.0.1:{port}"],
                          check=True, capture_output=True, text=True).stdout.strip()
    prof = os.path.join(d, "me.spa")
    subprocess.run([CLIENT, "--key", prof, "keygen"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run([CLIENT, "--key", prof, "add-server", "lo", card], check=True, stdout=subprocess.DEVNULL)
    return prof, sink, port
