// ArrayModel: the nouns and units of the array, shared by every layer. Nothing here does I/O.
//
// Units: a sector is 512 bytes (the unit of valid/dirty state in the cache); a strip is one stripe unit on one drive;
// a track is the cache's unit and is exactly one data strip; a stripe is one strip on every member drive.

public let sectorBytes = 512

/// Which RAID organisation the back end uses.
public enum RAIDLevel: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case raid0 = 0, raid1 = 1, raid5 = 5, raid6 = 6, raid10 = 10

    public init?(name: String) {
        switch name.lowercased() {
        case "0", "raid0": self = .raid0
        case "1", "raid1": self = .raid1
        case "5", "raid5": self = .raid5
        case "6", "raid6": self = .raid6
        case "10", "raid10": self = .raid10
        default: return nil
        }
    }

    public var description: String { "raid\(rawValue)" }

    /// Smallest member count the level makes sense with.
    public var minimumDrives: Int {
        switch self {
        case .raid0: return 1
        case .raid1: return 2
        case .raid5: return 3
        case .raid6: return 4
        case .raid10: return 4
        }
    }

    /// How many member drives may fail without losing data.
    public func faultTolerance(memberCount: Int) -> Int {
        switch self {
        case .raid0: return 0
        case .raid1: return memberCount - 1
        case .raid5: return 1
        case .raid6: return 2
        case .raid10: return 1
        }
    }

    /// Whether every byte is still reachable with the members in `outMask` (bit i = member i) out: up to the level's
    /// tolerance, except that mirrors survive as long as each mirror set keeps one member (RAID-10: one per pair).
    public func survives(outMask: UInt64, memberCount: Int) -> Bool {
        switch self {
        case .raid10:
            for pair in 0..<(memberCount / 2) where (outMask >> UInt64(2 * pair)) & 0b11 == 0b11 { return false }
            return true
        default:
            return outMask.nonzeroBitCount <= faultTolerance(memberCount: memberCount)
        }
    }

    /// Data strips per stripe for `memberCount` member drives.
    public func dataStripsPerStripe(memberCount: Int) -> Int {
        switch self {
        case .raid0: return memberCount
        case .raid1: return 1
        case .raid5: return memberCount - 1
        case .raid6: return memberCount - 2
        case .raid10: return memberCount / 2
        }
    }
}

/// A 128-bit identifier (array or drive), printed in the usual 8-4-4-4-12 form.
public struct UUID128: Hashable, Sendable, CustomStringConvertible {
    public var bytes: (UInt64, UInt64)
    public init(high: UInt64, low: UInt64) { bytes = (high, low) }
    public static func == (a: UUID128, b: UUID128) -> Bool { a.bytes == b.bytes }
    public func hash(into hasher: inout Hasher) { hasher.combine(bytes.0); hasher.combine(bytes.1) }
    public static func random<G: RandomNumberGenerator>(using generator: inout G) -> UUID128 {
        var high = generator.next() as UInt64
        var low = generator.next() as UInt64
        high = (high & ~0xF000) | 0x4000  // version 4
        low = (low & ~(0xC000_0000_0000_0000 as UInt64)) | 0x8000_0000_0000_0000
        return UUID128(high: high, low: low)
    }
    public var description: String {
        let h = String(bytes.0, radix: 16).leftPadded(16)
        let l = String(bytes.1, radix: 16).leftPadded(16)
        let s = Array(h + l)
        return String(s[0..<8]) + "-" + String(s[8..<12]) + "-" + String(s[12..<16]) + "-" + String(s[16..<20]) + "-"
            + String(s[20..<32])
    }
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// A director's name: engine number and side, printed "1a", "1b", "2a", ...
public struct DirectorID: Hashable, Sendable, CustomStringConvertible {
    public let engine: Int
    public let side: Int  // 0 = a, 1 = b
    public init(engine: Int, side: Int) {
        self.engine = engine
        self.side = side
    }
    /// Directors are numbered 0..<2*engines in the order 1a, 1b, 2a, 2b, ...
    public init(index: Int) { self.init(engine: index / 2 + 1, side: index % 2) }
    /// The most engines an array has (the superblock's bound; a director index fits 0..<2*enginesMax).
    public static let enginesMax = 8
    public var index: Int { (engine - 1) * 2 + side }
    public var description: String { "\(engine)\(side == 0 ? "a" : "b")" }
    /// "1a", "2b", ...; nil for anything else.
    public init?(parsing text: String) {
        guard let last = text.last, last == "a" || last == "b", let engine = Int(text.dropLast()), engine >= 1, engine <= DirectorID.enginesMax else {
            return nil
        }
        self.init(engine: engine, side: last == "a" ? 0 : 1)
    }
}

/// The role a drive plays in the array.
public enum DriveRole: UInt8, Sendable, CustomStringConvertible {
    case member = 1, spare = 2
    public var description: String { self == .member ? "member" : "spare" }
}

/// Parses sizes such as 4096, 64K, 1M, 1.5G, 2T (binary multiples). Returns nil for anything else.
public func parseSize(_ text: String) -> UInt64? {
    let trimmed = text.trimmingWhitespace()
    guard let last = trimmed.last else { return nil }
    var number = trimmed
    var multiplier: UInt64 = 1
    let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
    // ASCII only: "ß".uppercased() is "SS", which is no Character.
    func upper(_ c: Character) -> Character { c.isASCII ? Character(c.uppercased()) : c }
    var suffixUpper = upper(last)
    if suffixUpper == "B", trimmed.count >= 2 {
        // Accept "KB"/"KiB"-style suffixes too: 64KiB, 64KB.
        var body = trimmed.dropLast()
        if body.last == "i" || body.last == "I" { body = body.dropLast() }
        guard let unit = body.last else { return nil }
        suffixUpper = upper(unit)
        if let m = units[suffixUpper] {
            multiplier = m
            number = String(body.dropLast())
        } else {
            number = String(body)
        }
    } else if let m = units[suffixUpper] {
        multiplier = m
        number = String(trimmed.dropLast())
    }
    guard !number.isEmpty else { return nil }
    if let whole = UInt64(number) {
        let (product, overflow) = whole.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : product
    }
    guard multiplier > 1, let fraction = Double(number), fraction >= 0, fraction.isFinite else { return nil }
    let value = fraction * Double(multiplier)
    guard value < 1.8e19, value == value.rounded(.down) else { return nil }
    return UInt64(value)
}

/// Prints a byte count the way an administrator reads it: 1 GiB, 512 MiB, 64 KiB, 1000 B.
public func formatSize(_ bytes: UInt64) -> String {
    let units: [(UInt64, String)] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
    for (unit, name) in units where bytes >= unit {
        if bytes % unit == 0 { return "\(bytes / unit) \(name)" }
        let value = Double(bytes) / Double(unit)
        return "\((value * 10).rounded() / 10) \(name)"
    }
    return "\(bytes) B"
}

extension String {
    public func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s = s.dropFirst() }
        while let l = s.last, l.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}

/// The array's user-facing errors: one line that says what is wrong and what to do.
public struct VSAError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A monotonic clock, injected so the core never reads the wall clock itself (the simulator supplies its own).
public protocol Clock: Sendable {
    /// Nanoseconds since an arbitrary fixed point.
    func nowNanoseconds() -> UInt64
}

/// A LUN's name rules: 1-64 characters of letters, digits, '-', '_' and '.', not starting with '.'.
public func validateLUNName(_ name: String) -> String? {
    if name.isEmpty || name.utf8.count > 64 { return "LUN name must be 1 to 64 characters" }
    if name.hasPrefix(".") { return "LUN name must not start with '.'" }
    for c in name.unicodeScalars {
        let ok = (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || c == "-" || c == "_" || c == "."
        if !ok { return "LUN name may hold only letters, digits, '-', '_' and '.'" }
    }
    return nil
}
