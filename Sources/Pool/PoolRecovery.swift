// Recovery of a pool home at mount (and of a failed director's homes at a failover): the newer valid checkpoint,
// then roll-forward of the commits after it (PoolHome.swift's header says why that is safe). A drive image is
// hostile input: every field read is bounded before it is used, and a checkpoint that fails a check is not used.
import ArrayModel
import BackEnd
import Buffers
import MemoryServices

#if canImport(Glibc)
    import Glibc
#endif

extension PoolHome {
    /// A checkpoint header as read from a slot.
    struct CheckpointHeader {
        var slot: Int
        var number: UInt64
        var generation: UInt32
        var versionCount: Int
        var segmentEntries: Int
        var tableBytes: Int
        var tableCRC: UInt32
        var headSegment: Int
        var headRow: Int
        var headStripe: UInt64
        var nextSegment: Int
    }

    /// Loads home `home` from its checkpoint and log: its versions and map, and the segments its tables and log
    /// name, assigned in `space`. Writes nothing: a pool's homes are all loaded before any writes its checkpoint
    /// (`finishRecovery`), because a checkpoint may claim a segment, and a segment only a home not yet loaded names
    /// looks free (home 0 took home 1's segment so, and home 1's mount failed). Throws one line when the home cannot
    /// be loaded (no valid checkpoint, tables that fail their checks, a map cache too small to replay the log into).
    public static func load(
        home: Int, layout: PoolLayout, space: PoolSpace, poolTag: UInt64, store: any StripeStore, memory: MemoryServices, mapFrames: Int
    ) throws(VSAError) -> PoolHome {
        let h = PoolHome(home: home, layout: layout, space: space, poolTag: poolTag, store: store, memory: memory, mapFrames: mapFrames)
        try h.recover()
        return h
    }

    /// The newer checkpoint whose tables read back whole, else the older one; then the log after it.
    private func recover() throws(VSAError) {
        let headers = [0, 1].compactMap { readHeader(slot: $0) }
        guard !headers.isEmpty else { throw VSAError("pool home \(home): no valid checkpoint in either slot") }
        var errors: [String] = []
        for header in headers.sorted(by: { $0.number > $1.number }) {
            do throws(VSAError) {
                try load(header)
                try rollForward()
                return
            } catch {
                errors.append(error.message)
                reset()
            }
        }
        // Why the newer checkpoint would not do is the first thing to know.
        throw VSAError(errors.joined(separator: "; then "))
    }

    /// A failover: the director that acted for this home failed, and what it held of the home in memory (the map's
    /// dirty nodes and cached frames, the commit it was filling, the cleaner's victim) went with it. The director
    /// taking over loads the home from the drives as a mount does: the newer checkpoint, the commits after it, then
    /// a checkpoint. Nothing acknowledged is lost: a page in the lost commit is still write-pending in the partner's
    /// mirror (a slot stays write-pending until its pass commits), and the failover replays it after this. The
    /// other homes go on (every director is quiesced meanwhile); the segments this one names are assigned again.
    /// If the drives cannot give the home back, it is left empty and `lost`: its LUNs answer EIO (no version maps
    /// anything), it writes no checkpoint (which would make the loss durable), and the next mount recovers it.
    public func reloadFromDrives() throws(VSAError) {
        reset()
        map = BlockMap(home: UInt8(home), frameCount: map.frameCount, blockLimit: layout.blockCount, reader: self)
        do throws(VSAError) {
            try recover()
            lost = false
            try finishRecovery()
        } catch {
            reset()
            lost = true
            throw error
        }
    }

    /// The checkpoint that ends a recovery: the replayed log becomes part of the home's durable state, and the log
    /// starts again after it. Once every home of the pool is loaded.
    public func finishRecovery() throws(VSAError) {
        guard checkpoint() else { throw VSAError("pool home \(home): the checkpoint after recovery could not be written") }
    }

    private func readHeader(slot: Int) -> CheckpointHeader? {
        let buffer = alignedBuffer(bytes: PoolLayout.blockBytes)
        guard readBlock(layout.pba(stripe: layout.slotStart(home: home, slot: slot), block: 0), into: buffer.base) else { return nil }
        let b = buffer.base
        guard UInt32(littleEndian: b.load(fromByteOffset: 0, as: UInt32.self)) == PoolHome.headerMagic else { return nil }
        let stored = UInt32(littleEndian: b.load(fromByteOffset: 4, as: UInt32.self))
        b.storeBytes(of: 0, toByteOffset: 4, as: UInt32.self)
        guard crc32c(b, count: PoolLayout.blockBytes) == stored else { return nil }
        guard Int(b.load(fromByteOffset: 8, as: UInt8.self)) == home, Int(b.load(fromByteOffset: 9, as: UInt8.self)) == layout.homes,
            UInt32(littleEndian: b.load(fromByteOffset: 68, as: UInt32.self)) == UInt32(layout.blocksPerStripe),
            UInt64(littleEndian: b.load(fromByteOffset: 72, as: UInt64.self)) == layout.stripesPerSegment,
            UInt64(littleEndian: b.load(fromByteOffset: 80, as: UInt64.self)) == poolTag
        else { return nil }
        let header = CheckpointHeader(
            slot: slot, number: UInt64(littleEndian: b.load(fromByteOffset: 16, as: UInt64.self)),
            generation: UInt32(littleEndian: b.load(fromByteOffset: 12, as: UInt32.self)),
            versionCount: Int(UInt32(littleEndian: b.load(fromByteOffset: 24, as: UInt32.self))),
            segmentEntries: Int(UInt32(littleEndian: b.load(fromByteOffset: 28, as: UInt32.self))),
            tableBytes: Int(truncatingIfNeeded: UInt64(littleEndian: b.load(fromByteOffset: 32, as: UInt64.self))),
            tableCRC: UInt32(littleEndian: b.load(fromByteOffset: 40, as: UInt32.self)),
            headSegment: Int(Int32(littleEndian: b.load(fromByteOffset: 48, as: Int32.self))),
            headRow: Int(UInt32(littleEndian: b.load(fromByteOffset: 52, as: UInt32.self))),
            headStripe: UInt64(littleEndian: b.load(fromByteOffset: 56, as: UInt64.self)),
            nextSegment: Int(Int32(littleEndian: b.load(fromByteOffset: 64, as: Int32.self))))
        // Bounds: nothing below may index or allocate by an unchecked number.
        guard header.number >= 1, header.number < 1 << 62, header.generation >= 1, header.generation < MapEntry.birthLimit,
            header.versionCount <= layout.versionsMax, header.segmentEntries <= layout.segmentCount,
            header.tableBytes == header.versionCount * PoolLayout.versionRecordBytes + header.segmentEntries * PoolLayout.segmentEntryBytes,
            header.headSegment >= -1, header.headSegment < layout.segmentCount, header.nextSegment >= -1, header.nextSegment < layout.segmentCount,
            header.headRow >= 0, header.headRow < layout.rowsPerStripe, header.headStripe < layout.stripesPerSegment
        else { return nil }
        return header
    }

    /// Puts the home in the state `header` and its tables describe.
    private func load(_ header: CheckpointHeader) throws(VSAError) {
        let start = layout.slotStart(home: home, slot: header.slot)
        let stripeBytes = Int(layout.geometry.stripeDataBytes)
        let unit = layout.geometry.stripUnitBytes
        let stripes = (header.tableBytes + stripeBytes - 1) / stripeBytes
        guard UInt64(stripes) < layout.slotStripes else { throw VSAError("pool home \(home): checkpoint tables larger than their slot") }
        // Page-aligned: drives opened for direct I/O take nothing else.
        let tables = alignedBuffer(bytes: max(1, stripes) * stripeBytes)
        let ok = { () -> Bool in
            let raw = UnsafeMutableRawBufferPointer(start: tables.base, count: stripes * stripeBytes)
            for s in 0..<stripes {
                for i in 0..<layout.blocksPerRow { readTargets[i] = raw.baseAddress! + s * stripeBytes + i * unit }
                guard
                    store.readStrips(
                        stripe: start + 1 + UInt64(s), stripMask: (1 << UInt64(layout.blocksPerRow)) - 1, offsetBytes: 0, count: unit,
                        targets: readTargets)
                else { return false }
            }
            return crc32c(tables.base, count: header.tableBytes) == header.tableCRC
        }()
        guard ok else { throw VSAError("pool home \(home): checkpoint \(header.number)'s tables cannot be read or fail their CRC") }
        try parseTables(UnsafeRawPointer(tables.base), header)
        for s in [header.headSegment, header.nextSegment] where s >= 0 {
            guard space.owner(s) == UInt8(home) else { throw VSAError("pool home \(home): the log's segment \(s) is not this home's") }
        }
        generation = header.generation
        checkpointNumber = header.number
        activeSlot = header.slot
        openSegment = header.headSegment
        stripeInSegment = header.headStripe
        row = header.headRow
        nextSegment = header.nextSegment
    }

    /// The version records and segment entries of a checkpoint's tables, each checked before it is used.
    private func parseTables(_ base: UnsafeRawPointer, _ header: CheckpointHeader) throws(VSAError) {
        var records: [VersionRecord] = []
        for i in 0..<header.versionCount {
            let at = i * PoolLayout.versionRecordBytes
            let id = UInt32(littleEndian: base.load(fromByteOffset: at, as: UInt32.self))
            guard let kind = VersionRecord.Kind(rawValue: base.load(fromByteOffset: at + 4, as: UInt8.self)) else {
                throw VSAError("pool home \(home): version record \(i) has an unknown kind")
            }
            var v = VersionRecord(id: id, kind: kind, blocks: UInt64(littleEndian: base.load(fromByteOffset: at + 8, as: UInt64.self)))
            v.root = MapEntry(raw: UInt64(littleEndian: base.load(fromByteOffset: at + 16, as: UInt64.self)))
            v.origin = UInt32(littleEndian: base.load(fromByteOffset: at + 24, as: UInt32.self))
            v.threshold = UInt32(littleEndian: base.load(fromByteOffset: at + 28, as: UInt32.self))
            v.generation = UInt32(littleEndian: base.load(fromByteOffset: at + 32, as: UInt32.self))
            v.mapped = UInt64(littleEndian: base.load(fromByteOffset: at + 40, as: UInt64.self))
            v.own = UInt64(littleEndian: base.load(fromByteOffset: at + 48, as: UInt64.self))
            v.unique = UInt64(littleEndian: base.load(fromByteOffset: at + 56, as: UInt64.self))
            let nameCount = Int(UInt32(littleEndian: base.load(fromByteOffset: at + 68, as: UInt32.self)))
            guard nameCount <= VersionLabel.nameBytesMax,
                let name = String(validating: UnsafeRawBufferPointer(start: base + at + 96, count: nameCount), as: UTF8.self),
                name.isEmpty || validateLUNName(name) == nil
            else { throw VSAError("pool home \(home): version record \(i) (id \(id)) has a damaged name") }
            v.label = VersionLabel(
                lunID: UInt32(littleEndian: base.load(fromByteOffset: at + 64, as: UInt32.self)), name: name,
                createdSeconds: UInt64(littleEndian: base.load(fromByteOffset: at + 72, as: UInt64.self)),
                secureUntilSeconds: UInt64(littleEndian: base.load(fromByteOffset: at + 80, as: UInt64.self)))
            guard id != 0, v.blocks > 0, v.blocks <= PoolLayout.localBlocksMax, !v.root.isMapped || v.root.pba < layout.blockCount,
                v.threshold <= header.generation, v.generation <= header.generation, v.mapped <= v.blocks, v.own <= v.mapped, v.unique <= v.own
            else { throw VSAError("pool home \(home): version record \(i) (id \(id)) is out of range") }
            records.append(v)
        }
        for v in records {
            guard records.filter({ $0.id == v.id }).count == 1 else { throw VSAError("pool home \(home): version \(v.id) recorded twice") }
            guard v.origin == 0 || records.contains(where: { $0.id == v.origin && $0.kind != .live }) else {
                throw VSAError("pool home \(home): version \(v.id) names origin \(v.origin), which is no snapshot here")
            }
        }
        for v in records {
            versions[v.id] = v
            map.addVersion(v.id, blocks: v.blocks, root: v.root)
        }
        recountDependents()
        for i in 0..<header.segmentEntries {
            let at = header.versionCount * PoolLayout.versionRecordBytes + i * PoolLayout.segmentEntryBytes
            let segment = Int(UInt32(littleEndian: base.load(fromByteOffset: at, as: UInt32.self)))
            let live = UInt32(littleEndian: base.load(fromByteOffset: at + 4, as: UInt32.self))
            // A dead segment outside the log holds nothing of this home: it is not taken. A checkpoint written before
            // tables left out the segments they release may name one another home took since, and that home may be
            // loaded after this one (it must find the segment free).
            if live == 0 && segment < layout.segmentCount && segment != header.headSegment && segment != header.nextSegment {
                continue
            }
            guard segment < layout.segmentCount, Int(live) <= layout.blocksPerSegment, space.assign(segment, home: home, live: live) else {
                let owner = segment < layout.segmentCount ? space.owner(segment) : PoolSpace.free
                let whose = owner == PoolSpace.free ? "" : owner == PoolSpace.reserved ? " (reserved)" : " (home \(owner)'s)"
                throw VSAError("pool home \(home): segment entry \(i) (segment \(segment)\(whose)) is out of range or not free for this home")
            }
        }
    }

    /// Replays the commits after the checkpoint, in order, while each is whole and in sequence.
    private func rollForward() throws(VSAError) {
        let d = layout.blocksPerRow
        var expected: UInt64 = 0
        let summary = alignedBuffer(bytes: PoolLayout.blockBytes)
        while openSegment >= 0 {
            let segment = openSegment
            let stripe = layout.firstStripe(segment: segment) + stripeInSegment
            guard readBlock(layout.pba(stripe: stripe, block: row * d), into: summary.base) else { break }
            guard let commit = parseSummary(summary.base, stripe: stripe, row: row, sequence: expected) else { break }
            // The commit's rows, then every block against its CRC: a torn commit is not replayed.
            // Into the stripe buffer's bank 0 (nothing else is in it while the log is replayed).
            for i in 0..<d { readTargets[i] = stripeBuffer.slice(i) + row * PoolLayout.blockBytes }
            guard
                store.readStrips(
                    stripe: stripe, stripMask: (1 << UInt64(d)) - 1, offsetBytes: row * PoolLayout.blockBytes, count: commit.rows * PoolLayout.blockBytes,
                    targets: readTargets)
            else { break }
            var k = 0
            var whole = true
            for e in 0..<commit.entries {
                let (kind, _, _, last) = entry(summary.base, e)
                guard kind == 1 || kind == 3 else { continue }
                k += 1
                if kind == 1 && crc32c(bufferAddress(row * d + k, bank: 0), count: PoolLayout.blockBytes) != last { whole = false }
            }
            guard whole else { break }
            k = 0
            for e in 0..<commit.entries {
                let (kind, position, version, last) = entry(summary.base, e)
                switch kind {
                case 1:
                    k += 1
                    guard mapBlock(version, block: position, to: layout.pba(stripe: stripe, block: row * d + k)) else {
                        throw VSAError("pool home \(home): the map cache is too small to replay the log (mount with a larger --cache)")
                    }
                case 2:
                    guard unmapMapped(version, from: position, end: position + UInt64(last), makingRoom: false) else {
                        throw VSAError("pool home \(home): the map cache is too small to replay the log (mount with a larger --cache)")
                    }
                default:
                    k += 1  // a node of a checkpoint that never completed: dead space
                }
            }
            if commit.next >= 0 {
                guard space.assign(commit.next, home: home, live: 0) else { break }
                nextSegment = commit.next
            }
            advance(rows: commit.rows)
            expected += 1
            rolledForward += 1
        }
    }

    private struct Commit {
        var rows: Int
        var entries: Int
        var next: Int
    }

    /// A summary's header and entries, checked against where it was found and what the home knows.
    private func parseSummary(_ s: UnsafeMutableRawPointer, stripe: UInt64, row: Int, sequence: UInt64) -> Commit? {
        guard UInt32(littleEndian: s.load(fromByteOffset: 0, as: UInt32.self)) == PoolHome.summaryMagic else { return nil }
        let stored = UInt32(littleEndian: s.load(fromByteOffset: 4, as: UInt32.self))
        s.storeBytes(of: 0, toByteOffset: 4, as: UInt32.self)
        let crc = crc32c(s, count: PoolLayout.blockBytes)
        s.storeBytes(of: stored.littleEndian, toByteOffset: 4, as: UInt32.self)
        let d = layout.blocksPerRow
        let rows = Int(UInt32(littleEndian: s.load(fromByteOffset: 44, as: UInt32.self)))
        let entries = Int(UInt32(littleEndian: s.load(fromByteOffset: 48, as: UInt32.self)))
        let blocks = Int(UInt32(littleEndian: s.load(fromByteOffset: 52, as: UInt32.self)))
        let next = Int(Int32(littleEndian: s.load(fromByteOffset: 56, as: Int32.self)))
        guard crc == stored, Int(s.load(fromByteOffset: 8, as: UInt8.self)) == home,
            UInt64(littleEndian: s.load(fromByteOffset: 64, as: UInt64.self)) == poolTag,
            UInt32(littleEndian: s.load(fromByteOffset: 12, as: UInt32.self)) == generation,
            UInt64(littleEndian: s.load(fromByteOffset: 16, as: UInt64.self)) == checkpointNumber,
            UInt64(littleEndian: s.load(fromByteOffset: 24, as: UInt64.self)) == sequence,
            UInt64(littleEndian: s.load(fromByteOffset: 32, as: UInt64.self)) == stripe,
            Int(UInt32(littleEndian: s.load(fromByteOffset: 40, as: UInt32.self))) == row,
            rows >= 1, row + rows <= layout.rowsPerStripe, blocks + 1 <= rows * d, blocks + 1 > (rows - 1) * d,
            entries <= PoolHome.entryCapacity, next >= -1, next < layout.segmentCount
        else { return nil }
        var consuming = 0
        for e in 0..<entries {
            let (kind, position, version, last) = entry(s, e)
            switch kind {
            case 1, 2:
                guard let v = versions[version], v.kind == .live, position < v.blocks else { return nil }
                if kind == 1 {
                    consuming += 1
                } else {
                    guard last > 0, UInt64(last) <= v.blocks - position else { return nil }
                }
            case 3:
                consuming += 1
            default:
                return nil
            }
        }
        guard consuming == blocks else { return nil }
        return Commit(rows: rows, entries: entries, next: next)
    }

    private func entry(_ s: UnsafeMutableRawPointer, _ e: Int) -> (kind: UInt64, position: UInt64, version: UInt32, last: UInt32) {
        let at = PoolHome.summaryHeaderBytes + e * 16
        let word = UInt64(littleEndian: s.load(fromByteOffset: at, as: UInt64.self))
        return (
            word >> 60, word & ((1 << 60) - 1), UInt32(littleEndian: s.load(fromByteOffset: at + 8, as: UInt32.self)),
            UInt32(littleEndian: s.load(fromByteOffset: at + 12, as: UInt32.self))
        )
    }
}
