// An ordinary user creates, mounts, uses and unmounts an array, as on a desktop. /dev/fuse is 0600 on this machine
// (desktops ship 0666), so the test gives a private mount namespace a 0666 /dev/fuse and runs as `nobody` there.
import Foundation
import XCTest

final class UserMountTests: XCTestCase {
    func testOrdinaryUserMountsThroughFusermount() throws {
        guard Harness.isRoot else { throw XCTSkip("needs root to set up the private namespace") }
        // make test installs fuse3; setpriv and unshare are util-linux's. Missing, the test fails rather than skips.
        XCTAssertEqual(Harness.sh("command -v setpriv && command -v unshare && command -v fusermount3").status, 0, "setpriv, unshare or fusermount3 missing")
        let root = "/tmp/vsa-it-user-\(getpid())"
        defer { Harness.sh("rm -rf '\(root)'") }
        Harness.sh("rm -rf '\(root)'; mkdir -p '\(root)/home' && chmod 755 '\(root)' && chown nobody:nogroup '\(root)/home'")
        let script = """
            set -e
            R='\(root)'
            mknod $R/fuse c 10 229
            chmod 666 $R/fuse
            mount --bind $R/fuse /dev/fuse
            U="setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME=$R/home"
            # nobody gets its own copy of the binary: the build tree may sit in a folder nobody cannot enter (a clone
            # in root's 0700 home).
            install -m 755 "$VSA" $R/vsa
            VSA=$R/vsa
            # Nor can nobody enter the folder the tests run from: it works from its own home.
            cd $R/home
            cleanup() { $U fusermount3 -uz $R/home/mnt 2>/dev/null || true; }
            trap cleanup EXIT
            $U "$VSA" create $R/home/array --drives 3 --drive-size 32M
            $U "$VSA" lun create $R/home/array l0 --size 16M
            $U mkdir -p $R/home/mnt
            $U "$VSA" mount $R/home/array $R/home/mnt
            test "$($U stat -c '%U %s' $R/home/mnt/l0)" = "nobody 16777216"
            $U head -c 6M /dev/urandom > $R/data
            $U dd if=$R/data of=$R/home/mnt/l0 bs=64k conv=notrunc,fsync status=none
            $U "$VSA" status $R/home/mnt --json | grep -q '"mountpoint"'
            $U "$VSA" unmount $R/home/mnt
            $U "$VSA" status $R/home/array | head -1 | grep -q ' clean'
            $U "$VSA" mount $R/home/array $R/home/mnt
            $U cmp -n 6291456 $R/home/mnt/l0 $R/data
            $U "$VSA" unmount $R/home/mnt
            """
        try script.write(toFile: root + "/run.sh", atomically: true, encoding: .utf8)
        let r = Harness.sh("unshare -m --propagation private bash '\(root)/run.sh'", timeoutSeconds: 120)
        XCTAssertEqual(r.status, 0, "\(r.stdout)\n\(r.stderr)")
    }
}
