// Formatting a new array: validate everything first, then create drive files (or link block devices), then write
// superblocks and an empty LUN table. A drive that holds data vsa does not recognise, or another vsa array, is never
// written unless the administrator says --force.
import ArrayModel
import Drives
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

extension ArrayStore {
    public static let minimumDriveBytes: UInt64 = 8 << 20

    public static func create(_ options: CreateOptions) throws(VSAError) -> ArrayStore {
        let dir = options.directory
        let raid = options.raidLevel
        let usingPaths = !options.drivePaths.isEmpty
        if usingPaths && (options.driveCount != nil || options.driveSizeBytes != nil) {
            throw VSAError("use either --drives N --drive-size SIZE or --drive PATH ..., not both")
        }
        if !usingPaths && (options.driveCount == nil || options.driveSizeBytes == nil) {
            throw VSAError("say how many drive files to create and how big: --drives N --drive-size SIZE (or give --drive PATH ...)")
        }
        let total = usingPaths ? options.drivePaths.count : options.driveCount!
        guard options.spareCount >= 0, options.spareCount < total else {
            throw VSAError("--spares must be between 0 and the drive count minus one (got \(options.spareCount))")
        }
        let members = total - options.spareCount
        guard total <= Layout.drivesMax else { throw VSAError("at most \(Layout.drivesMax) drives per array (got \(total))") }
        guard members >= raid.minimumDrives else {
            throw VSAError("\(raid) needs at least \(raid.minimumDrives) member drives (got \(members)); add drives or pick another --raid")
        }
        if raid == .raid10 && members % 2 != 0 { throw VSAError("raid10 needs an even number of member drives (got \(members))") }
        let su = options.stripUnitBytes
        guard su >= 4096, su <= 16 << 20, su & (su - 1) == 0 else {
            throw VSAError("--stripe-unit must be a power of two from 4K to 16M (got \(su))")
        }
        guard options.engineCount >= 1, options.engineCount <= DirectorID.enginesMax else {
            throw VSAError("--engines must be 1 to \(DirectorID.enginesMax) (got \(options.engineCount))")
        }
        guard options.cacheBytes >= Layout.cacheBytesMin, options.cacheBytes <= Layout.cacheBytesMax else {
            throw VSAError("--cache must be from 16M to 1T (got \(formatSize(options.cacheBytes)))")
        }
        if let size = options.driveSizeBytes, size > Layout.driveBytesMax {
            throw VSAError("--drive-size must be at most \(formatSize(Layout.driveBytesMax)) (got \(formatSize(size)))")
        }

        // The folder: create it, or refuse to replace an array in it.
        var st = stat()
        if stat(dir, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFDIR else { throw VSAError("\(dir) exists and is not a folder; pick another path") }
        } else if mkdir(dir, 0o700) != 0 {
            throw VSAError("cannot create folder \(dir): \(Posix.errnoDescription(errno))")
        }
        let existing = driveEntries(directory: dir)
        if !existing.isEmpty {
            guard options.force else {
                throw VSAError("\(dir) already holds an array; use --force to destroy it and create a new one")
            }
            if let fd = try? Posix.open(lockPath(directory: dir), flags: O_RDWR | O_CREAT | O_CLOEXEC, mode: 0o600) {
                defer { Posix.close(fd) }
                if (try? Posix.tryLockExclusive(fd)) == false { throw VSAError("the array in \(dir) is mounted; unmount it first") }
            }
        }

        // Probe the given drives before writing anything.
        var driveSize: UInt64
        var resolvedPaths: [String] = []
        // Remote drives, opened once here (connected, sized, known to take writes) and kept for the new array.
        var remoteDrives: [String: Drive] = [:]
        if usingPaths {
            driveSize = UInt64.max
            for path in options.drivePaths {
                let resolved: String
                let remote = Drive.isURI(path)
                if remote {
                    // A remote drive (NBD): the URI is what the folder keeps; the server is asked below.
                    resolved = path
                } else {
                    guard let real = realpath(path, nil) else {
                        throw VSAError("drive \(path) does not exist; create the file or attach the device first")
                    }
                    resolved = String(cString: real)
                    free(real)
                }
                if resolvedPaths.contains(resolved) { throw VSAError("drive \(path) is named twice") }
                resolvedPaths.append(resolved)
                // A server that cannot be reached, or serves the export read-only, is refused before its contents are.
                if remote {
                    do { remoteDrives[resolved] = try Drive.open(resolved) } catch { throw VSAError("cannot use drive \(path): \(error)") }
                }
                let probe = readSuperblockCopies(path: resolved)
                if let sb = probe.valid, !options.force {
                    throw VSAError("\(path) belongs to vsa array \(sb.arrayUUID); use --force to overwrite it")
                }
                if probe.valid == nil && probe.firstBytesNonZero && !options.force {
                    throw VSAError("\(path) holds data that is not a vsa superblock; refusing to overwrite it (use --force if you are sure)")
                }
                let size: UInt64
                if let drive = remoteDrives[resolved] {
                    size = drive.sizeBytes
                } else {
                    do {
                        let fd = try Posix.open(resolved, flags: O_RDONLY | O_CLOEXEC)
                        defer { Posix.close(fd) }
                        size = try Posix.fileSize(fd: fd).sizeBytes
                    } catch { throw VSAError("cannot open drive \(path): \(error)") }
                }
                // Past 1 PiB a drive's tail is not used (capacities and offsets stay far from 64-bit limits).
                driveSize = min(driveSize, size, Layout.driveBytesMax)
            }
        } else {
            driveSize = options.driveSizeBytes!
        }
        let directors = 2 * options.engineCount
        let smallest = max(minimumDriveBytes, DriveLayout.minimumDriveBytes(stripUnitBytes: su, directorCount: directors))
        guard driveSize >= smallest, let plan = DriveLayout.plan(driveBytes: driveSize, stripUnitBytes: su, directorCount: directors) else {
            throw VSAError(
                "drives must be at least \(formatSize(smallest)) with a \(formatSize(UInt64(su))) stripe unit and \(options.engineCount) engine(s) (got \(formatSize(driveSize)))"
            )
        }
        let dataBytes = plan.dataBytesPerDrive

        var generator = SystemRandomNumberGenerator()
        let uuid = UUID128.random(using: &generator)
        var sb = Superblock(
            clean: true, generation: 0, arrayUUID: uuid, driveUUID: uuid, driveIndex: 0, memberCount: members,
            spareCount: options.spareCount, raidLevel: raid, role: .member, stripUnitBytes: su,
            engineCount: options.engineCount, dataOffsetBytes: plan.layout.dataOffsetBytes, dataBytesPerDrive: dataBytes,
            cacheBytes: options.cacheBytes, createdUnixSeconds: UInt64(time(nil)))
        sb.journalSliceBytes = plan.layout.journalSliceBytes
        sb.checksumBytes = plan.layout.checksumBytes
        // What assembly will check, checked before anything is written: an array vsa cannot mount is never made.
        do { _ = try Superblock.decode(sb.encode()) } catch { throw VSAError("these options make an array vsa could not assemble: \(error.reason)") }
        // Destroy the old array's entries (only with --force, checked above).
        for old in existing { unlink(old) }
        for name in ["control.sock"] { unlink("\(dir)/\(name)") }

        for i in 0..<total {
            let entry = drivePath(directory: dir, index: i)
            if usingPaths {
                guard symlink(resolvedPaths[i], entry) == 0 else { throw VSAError("cannot link \(entry): \(Posix.errnoDescription(errno))") }
            } else {
                do { try Drive.createFile(path: entry, sizeBytes: driveSize) } catch {
                    throw VSAError("cannot create drive file \(entry): \(error)")
                }
            }
        }

        var drives: [Drive] = []
        for i in 0..<total {
            if usingPaths, let drive = remoteDrives[resolvedPaths[i]] {
                drives.append(drive)
                continue
            }
            do { drives.append(try Drive.open(usingPaths ? resolvedPaths[i] : drivePath(directory: dir, index: i))) } catch {
                throw VSAError("cannot open drive \(usingPaths ? options.drivePaths[i] : drivePath(directory: dir, index: i)): \(error)")
            }
        }
        let store: ArrayStore
        do {
            store = try ArrayStore(
                directory: dir, drives: drives, drivePaths: (0..<total).map { drivePath(directory: dir, index: $0) },
                superblock: sb, lunTable: LUNTable(generation: 0, arrayUUID: uuid, entries: []))
        } catch { throw VSAError("cannot set up io_uring: \(error)") }
        if usingPaths {
            // Reused drives: old contents would make parity inconsistent and leak into new LUNs; zero the data area, and
            // the journal and checksum areas (an older array's records and checksums are not this one's).
            store.zeroStripes(start: 0, count: store.geometry.stripeCount)
            for drive in drives
            where !ArrayStore.zeroRange(drive, offsetBytes: DriveLayout.journalOffsetBytes, count: sb.dataOffsetBytes - DriveLayout.journalOffsetBytes) {
                throw VSAError("cannot clear the journal and checksum areas of \(drive.path)")
            }
        }
        try store.writeLUNTable(LUNTable(generation: 0, arrayUUID: uuid, entries: []))
        try store.writeSuperblocks(clean: true)
        return store
    }
}
