// The control socket is input: idle, slow, garbage-sending and oversized clients, dozens at once, get an answer or a
// closed connection, never a dead or deaf daemon, and host I/O goes on meanwhile. An array folder deeper than a
// socket address can name still gets its socket.
import Foundation
import XCTest

final class ControlSocketTests: FixtureTestCase {
    override class var rootReason: String? { "mounts a FUSE file system" }
    override class var fixtureBase: String { "/dev/shm" }

    func testHostileClientsNeitherStopNorStallTheDaemon() throws {
        let f = fixture!
        try f.create("--drives 3 --drive-size 32M")
        XCTAssertEqual(f.vsa("lun create '\(f.dir)' l0 --size 16M").status, 0)
        try f.mount()
        defer { f.unmount() }
        let script = """
            import os, socket, subprocess, sys, time
            path, mnt, root = sys.argv[1], sys.argv[2], sys.argv[3]
            vsa = os.environ["VSA"]
            def connect():
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                return s
            def reply(s):
                s.settimeout(20)
                data = b""
                try:
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except (ConnectionResetError, socket.timeout):
                    pass
                return data
            # Twenty silent clients and five that stop mid-line hold their threads.
            silent = [connect() for _ in range(20)]
            partial = [connect() for _ in range(5)]
            for s in partial:
                s.sendall(b"stat")
            # Meanwhile: status answers at once, and host I/O goes on.
            t = time.time()
            r = subprocess.run([vsa, "status", mnt, "--json"], capture_output=True, timeout=60)
            assert r.returncode == 0 and b'"mountpoint"' in r.stdout, r.stderr
            assert time.time() - t < 3, "status took %.1f s with silent clients connected" % (time.time() - t)
            data = os.urandom(4 << 20)
            with open(root + "/data", "wb") as out:
                out.write(data)
            subprocess.run(["dd", "if=" + root + "/data", "of=" + mnt + "/l0", "bs=64k", "conv=notrunc,fsync", "status=none"], check=True, timeout=60)
            with open(mnt + "/l0", "rb") as back:
                assert back.read(len(data)) == data, "host I/O read back wrong"
            # Garbage, nonsense and numbers from the far end of the range: one error line each.
            for payload in [b"\\x00\\xff\\xfe garbage\\n", b"\\t\\t\\t\\n", b"lun-create\\tx\\t18446744073709551104\\n",
                            b"lun-create\\tx\\t18446744073709551615\\n", b"lun-create\\tx\\t0\\n", b"scrub\\t1\\t-5\\n",
                            b"drive-fail\\t99999999999999999999999\\t0\\n", b"drive-replace\\t-1\\t\\t0\\t0\\n",
                            b"director-fail\\t9999999999a\\n", b"lun-delete\\t\\n", b"\\n"]:
                s = connect()
                s.sendall(payload)
                answer = reply(s)
                assert answer.startswith(b"error "), (payload, answer)
                assert answer.count(b"\\n") <= 1, (payload, answer)
                s.close()
            # An oversized frame: an error or a closed connection.
            s = connect()
            try:
                s.sendall(b"x" * (256 << 10))
            except (BrokenPipeError, ConnectionResetError):
                pass
            answer = reply(s)
            assert answer == b"" or answer.startswith(b"error request longer"), answer[:100]
            s.close()
            # Forty clients at once: each gets ok or a one-line "try again".
            crowd = [connect() for _ in range(40)]
            for s in crowd:
                try:
                    s.sendall(b"status\\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # turned away already
            answers = [reply(s) for s in crowd]
            ok = sum(1 for a in answers if a.startswith(b"ok\\n"))
            busy = sum(1 for a in answers if a.startswith(b"error the daemon is serving") or a == b"")
            assert ok + busy == 40 and ok >= 1, (ok, busy, [a[:60] for a in answers])
            # The silent ones are told off after the request timeout.
            for s in silent + partial:
                answer = reply(s)
                assert answer == b"" or answer.startswith(b"error "), answer
            r = subprocess.run([vsa, "status", mnt], capture_output=True, timeout=60)
            assert r.returncode == 0, r.stderr
            print("ok", ok, busy)
            """
        try script.write(toFile: f.root + "/clients.py", atomically: true, encoding: .utf8)
        let r = Harness.sh("python3 '\(f.root)/clients.py' '\(f.dir)/control.sock' '\(f.mnt)' '\(f.root)'", timeoutSeconds: 180)
        XCTAssertEqual(r.status, 0, "\(r.stdout)\n\(r.stderr)")
        XCTAssertNotNil(f.daemonPID.flatMap { kill($0, 0) == 0 ? $0 : nil }, "the daemon died")
        XCTAssertEqual(f.vsa("lun list '\(f.mnt)' --json").status, 0)
        XCTAssertFalse(f.vsa("lun list '\(f.mnt)'").stdout.contains(" x "), "a refused lun-create left a LUN behind")
    }

    /// A folder path longer than a socket address holds (108 bytes): the socket lives in it all the same, and `vsa`
    /// finds it.
    func testDeepArrayFolderStillHasItsSocket() throws {
        let f = fixture!
        let deep = f.root + "/" + String(repeating: "d", count: 60) + "/" + String(repeating: "e", count: 60)
        XCTAssertGreaterThan(deep.utf8.count + "/control.sock".utf8.count, 108)
        let r = Harness.sh(
            """
            set -e
            mkdir -p '\(deep)'
            "$VSA" create '\(deep)' --drives 3 --drive-size 32M
            "$VSA" lun create '\(deep)' l0 --size 8M
            "$VSA" mount '\(deep)' '\(f.mnt)'
            test -S '\(deep)/control.sock'
            "$VSA" status '\(f.mnt)' --json | grep -q '"mountpoint"'
            "$VSA" lun create '\(f.mnt)' l1 --size 4M
            test -f '\(f.mnt)/l1'
            "$VSA" unmount '\(f.mnt)'
            """, timeoutSeconds: 120)
        XCTAssertEqual(r.status, 0, "\(r.stdout)\n\(r.stderr)")
    }
}
