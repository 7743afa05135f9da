// Block devices as drives, and the mount(8) route: `mount -t vsa` and an fstab line through mount.vsa.
import Foundation
import XCTest

final class HelperTests: FixtureTestCase {
    override class var rootReason: String? { "loop devices and mount(8) need root" }

    /// Loop devices as the drives: `vsa create --drive /dev/loopN ...`, data across a remount, loops detached after.
    func testBlockDevicesAsDrives() throws {
        let r = Harness.sh(
            """
            set -e
            R='\(fixture.root)'
            LOOPS=""
            cleanup() { "$VSA" unmount $R/mnt >/dev/null 2>&1 || true; for l in $LOOPS; do losetup -d $l; done; }
            trap cleanup EXIT
            for i in 0 1 2 3; do truncate -s 48M $R/bd$i; LOOPS="$LOOPS $(losetup --find --show $R/bd$i)"; done
            ARGS=""; for l in $LOOPS; do ARGS="$ARGS --drive $l"; done
            "$VSA" create $R/array $ARGS --raid 6 --stripe-unit 16K
            test -L $R/array/drive-0
            "$VSA" lun create $R/array l0 --size 40M
            "$VSA" mount $R/array $R/mnt
            head -c 40M /dev/urandom > $R/data
            dd if=$R/data of=$R/mnt/l0 bs=1M conv=notrunc,fsync status=none
            "$VSA" status $R/mnt --json | grep -q '"raidLevel":"raid6"'
            # Block devices take direct I/O (their node on devtmpfs must not make them look memory-backed).
            ! "$VSA" status $R/mnt | grep -q 'buffered I/O'
            "$VSA" unmount $R/mnt
            "$VSA" mount $R/array $R/mnt
            cmp $R/mnt/l0 $R/data
            "$VSA" unmount $R/mnt
            # A device that belongs to this array is refused for a new one without --force.
            if "$VSA" create $R/other --drive $(echo $LOOPS | cut -d' ' -f1) --drive $R/bd9 2>$R/err; then exit 1; fi
            """)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
    }

    /// `mount -t vsa DIR MNT` and an fstab line, through /sbin/mount.vsa (installed for the test if absent).
    func testMountTypeVsaAndFstabLine() throws {
        let fm = FileManager.default
        let installedHelper = !fm.fileExists(atPath: "/sbin/mount.vsa")
        let installedBinary = !fm.fileExists(atPath: "/usr/local/bin/vsa")
        guard installedHelper && installedBinary else { throw XCTSkip("vsa is installed on this machine; not touching it") }
        let helper = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("mount-helpers/mount.vsa").path
        Harness.sh("ln -s '\(helper)' /sbin/mount.vsa && ln -s '\(Harness.vsa)' /usr/local/bin/vsa")
        defer { Harness.sh("rm -f /sbin/mount.vsa /usr/local/bin/vsa") }
        try fixture.create("--drives 3 --drive-size 32M")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' l0 --size 8M").status, 0)
        let r = Harness.sh(
            """
            set -e
            mount -t vsa '\(fixture.dir)' '\(fixture.mnt)' -o cache=32M
            test "$(stat -c %s '\(fixture.mnt)'/l0)" = 8388608
            "$VSA" unmount '\(fixture.mnt)'
            echo "\(fixture.dir) \(fixture.mnt) vsa defaults,_netdev 0 0" > '\(fixture.root)'/fstab
            mount -T '\(fixture.root)'/fstab '\(fixture.mnt)'
            grep -q "fuse.vsa" /proc/mounts
            "$VSA" unmount '\(fixture.mnt)'
            """)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
    }
}
