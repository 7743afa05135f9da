// The command line's error contract: bad input gets one line on stderr, a non-zero exit, and changes nothing.
import Foundation
import XCTest

final class CLITests: FixtureTestCase {

    func assertOneLineError(_ arguments: String, contains fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        let r = fixture.vsa(arguments)
        XCTAssertNotEqual(r.status, 0, "`vsa \(arguments)` should fail", file: file, line: line)
        XCTAssertEqual(r.stderrLines.count, 1, "`vsa \(arguments)` stderr: \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.lowercased().contains(fragment.lowercased()), "`vsa \(arguments)` said: \(r.stderr)", file: file, line: line)
    }

    func testBadInputIsOneLineAndChangesNothing() throws {
        let d = fixture.dir
        assertOneLineError("create '\(d)' --drives 4 --drive-size 1Q", contains: "invalid size")
        assertOneLineError("create '\(d)' --drives 4 --drive-size 64M --raid 7", contains: "unknown RAID level")
        assertOneLineError("create '\(d)' --drives 2 --drive-size 64M --raid 5", contains: "at least 3")
        assertOneLineError("create '\(d)' --drives 3 --drive-size 64M --raid 10", contains: "at least 4")
        assertOneLineError("create '\(d)' --drives 4 --drive-size 64M --stripe-unit 3K", contains: "power of two")
        assertOneLineError("create '\(d)' --drives 4 --drive-size 1M", contains: "at least")
        assertOneLineError("create '\(d)' --drive-size 64M", contains: "--drives")
        assertOneLineError("create '\(d)' --drives 4 --drive-size 64M --spares 4", contains: "--spares")
        assertOneLineError("create '\(d)' --drives 4 --drive-size 8388608T", contains: "--drive-size must be at most")
        assertOneLineError("create '\(d)' --drives 4 --drive-size 64M --cache 2T", contains: "--cache must be")
        assertOneLineError("create '\(d)' --drives 4 --drive-size 64M --cache 0", contains: "--cache must be")
        assertOneLineError("create '\(d)' --drives 100000 --drive-size 64M", contains: "at most 64")
        assertOneLineError("create '\(d)' --drives 4 --drive-size 64M --engines 9999999999", contains: "--engines")
        assertOneLineError("create '\(d)' --drives 4 --drive-size 64M --stripe-unit 9223372036854775807", contains: "power of two")
        assertOneLineError("create", contains: "missing")
        assertOneLineError("create '\(d)' --bogus", contains: "unknown option")
        assertOneLineError("frobnicate", contains: "unexpected argument")
        XCTAssertFalse(FileManager.default.fileExists(atPath: d + "/drive-0"), "a refused create left drives behind")

        try fixture.create("--drives 4 --drive-size 32M")
        let before = Harness.sh("sha256sum '\(d)'/drive-*").stdout
        assertOneLineError("create '\(d)' --drives 4 --drive-size 32M", contains: "--force")
        assertOneLineError("lun create '\(d)' lun0 --size 1T --thick", contains: "does not fit")
        // Numbers at the far end of the range: refused before any arithmetic (2^64-512 used to trap in stripesFor).
        assertOneLineError("lun create '\(d)' lun0 --size 18446744073709551104 --thick", contains: "does not fit")
        assertOneLineError("lun create '\(d)' lun0 --size 18446744073709551104 --thin", contains: "256 TiB")
        assertOneLineError("lun create '\(d)' lun0 --size 300T --thin", contains: "256 TiB")
        assertOneLineError("lun create '\(d)' lun0 --size 1G --thick --thin", contains: "exclude each other")
        assertOneLineError("lun create '\(d)' lun0 --size 18446744073709551615", contains: "multiple of 512")
        assertOneLineError("lun create '\(d)' lun0 --size 16777216T", contains: "not a whole number")
        assertOneLineError("lun create '\(d)' lun0 --size 1ß", contains: "invalid size")
        assertOneLineError("lun create '\(d)' lun0 --size 1000", contains: "multiple of 512")
        assertOneLineError("lun create '\(d)' 'bad/name' --size 1M", contains: "LUN name")
        assertOneLineError("lun create '\(d)' lun0 --size lots", contains: "invalid size")
        assertOneLineError("lun delete '\(d)' nothere", contains: "no LUN named")
        assertOneLineError("status /nonexistent/vsa", contains: "does not exist")
        assertOneLineError("status /tmp", contains: "no vsa array")
        assertOneLineError("unmount /tmp", contains: "not a mounted vsa array")
        assertOneLineError("mount '\(d)' /nonexistent/mnt", contains: "not a folder")
        XCTAssertEqual(Harness.sh("sha256sum '\(d)'/drive-*").stdout, before, "refused commands changed the drives")

        XCTAssertEqual(fixture.vsa("lun create '\(d)' lun0 --size 8M").status, 0)
        assertOneLineError("lun create '\(d)' lun0 --size 8M", contains: "already exists")
        let list = fixture.vsa("lun list '\(d)' --json")
        XCTAssertEqual(list.status, 0)
        let json = try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as! [String: Any]
        XCTAssertEqual((json["luns"] as! [[String: Any]]).first?["sizeBytes"] as? Int, 8 << 20)
        // A RAID-1 of 4 KiB strips has one-block stripes: no room for a commit's summary and a block. Refused, by name.
        XCTAssertEqual(fixture.vsa("create '\(d)/r1' --drives 2 --drive-size 32M --raid 1 --stripe-unit 4K").status, 0)
        let table = Harness.sh("sha256sum '\(d)'/r1/drive-*").stdout
        assertOneLineError("lun create '\(d)/r1' t --size 1G --thin", contains: "at least 8 KiB")
        XCTAssertEqual(Harness.sh("sha256sum '\(d)'/r1/drive-*").stdout, table, "a refused thin LUN changed the drives")
        // Thick LUNs that leave too few segments for a pool's homes: the thin LUN (the default) is refused, nothing
        // recorded (it was recorded, and the next mount failed making the homes).
        XCTAssertEqual(fixture.vsa("create '\(d)/full' --drives 3 --drive-size 32M --raid 5").status, 0)
        XCTAssertEqual(fixture.vsa("lun create '\(d)/full' k --size 55M --thick").status, 0)
        let full = Harness.sh("sha256sum '\(d)'/full/drive-*").stdout
        assertOneLineError("lun create '\(d)/full' t --size 1G", contains: "no room for a pool")
        XCTAssertEqual(Harness.sh("sha256sum '\(d)'/full/drive-*").stdout, full, "a refused thin LUN changed the drives")
        let help = fixture.vsa("--help")
        XCTAssertEqual(help.status, 0)
        XCTAssertTrue(help.stdout.contains("USAGE"))
    }

    func testDrivesThatAreNotOursAreNeverWritten() throws {
        guard Harness.isRoot else { throw XCTSkip("mount tests run as root") }
        // A foreign file offered as a drive is refused without --force.
        Harness.sh(
            "mkdir -p '\(fixture.root)/foreign' && head -c 32M /dev/urandom > '\(fixture.root)/foreign/x' && for i in 1 2; do truncate -s 32M '\(fixture.root)/foreign/z'$i; done"
        )
        let foreignSum = Harness.sh("sha256sum '\(fixture.root)/foreign/x'").stdout
        assertOneLineError(
            "create '\(fixture.dir)' --drive '\(fixture.root)/foreign/x' --drive '\(fixture.root)/foreign/z1' --drive '\(fixture.root)/foreign/z2'",
            contains: "not a vsa superblock")
        XCTAssertEqual(Harness.sh("sha256sum '\(fixture.root)/foreign/x'").stdout, foreignSum)

        // A RAID-0 array whose drive was overwritten by something else refuses to mount and leaves the drives alone.
        try fixture.create("--drives 3 --drive-size 32M --raid 0")
        Harness.sh("dd if=/dev/urandom of='\(fixture.dir)/drive-1' bs=4k count=2 conv=notrunc status=none")
        let sum = Harness.sh("sha256sum '\(fixture.dir)'/drive-*").stdout
        assertOneLineError("mount '\(fixture.dir)' '\(fixture.mnt)'", contains: "drive-1")
        XCTAssertEqual(Harness.sh("sha256sum '\(fixture.dir)'/drive-*").stdout, sum)
        XCTAssertFalse(Harness.sh("mountpoint -q '\(fixture.mnt)'").status == 0, "mounted anyway")

        // On RAID-5 the overwritten member is left out: the array mounts degraded, says so, serves the data, and
        // never writes that drive.
        Harness.sh("rm -rf '\(fixture.dir)'")
        try fixture.create("--drives 3 --drive-size 32M")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' l0 --size 8M").status, 0)
        try fixture.mount()
        Harness.sh(
            "head -c 4M /dev/urandom > '\(fixture.root)/data'; dd if='\(fixture.root)/data' of='\(fixture.mnt)/l0' bs=64k conv=notrunc,fsync status=none")
        fixture.unmount()
        Harness.sh("dd if=/dev/urandom of='\(fixture.dir)/drive-1' bs=4k count=2 conv=notrunc status=none")
        let damaged = Harness.sh("sha256sum '\(fixture.dir)/drive-1'").stdout
        let mounted = Harness.sh("\"$VSA\" mount '\(fixture.dir)' '\(fixture.mnt)'")
        XCTAssertEqual(mounted.status, 0, mounted.stderr)
        XCTAssertTrue(mounted.stderr.contains("drive-1") && mounted.stderr.contains("never written"), mounted.stderr)
        XCTAssertEqual(Harness.sh("cmp -n 4194304 '\(fixture.mnt)/l0' '\(fixture.root)/data'").status, 0, "degraded data differs")
        XCTAssertTrue(fixture.vsa("status '\(fixture.mnt)'").stdout.contains("degraded"))
        fixture.unmount()
        XCTAssertEqual(Harness.sh("sha256sum '\(fixture.dir)/drive-1'").stdout, damaged, "the member left out was written")
        Harness.sh("rm -rf '\(fixture.dir)'")

        // A second mount of a mounted array is refused.
        Harness.sh("rm -rf '\(fixture.dir)'")
        try fixture.create("--drives 3 --drive-size 32M")
        try fixture.mount()
        Harness.sh("mkdir -p '\(fixture.root)/mnt2'")
        assertOneLineError("mount '\(fixture.dir)' '\(fixture.root)/mnt2'", contains: "already mounted")
    }
}
