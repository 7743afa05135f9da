/// Where a LUN sits, as every layer below the front end names it: its table identity, its first array stripe and its
/// size. A thick LUN's stripes are one contiguous run of array stripes (Metadata's LUN table says which); a thin LUN
/// has none (start stripe 0): its blocks come from the pool (docs/POOL.md), found through its map.
public struct LUNRef: Sendable, Equatable {
    public let lunID: UInt32
    public let startStripe: UInt64
    public let sizeBytes: UInt64
    public let thin: Bool
    public init(lunID: UInt32, startStripe: UInt64, sizeBytes: UInt64, thin: Bool = false) {
        self.lunID = lunID
        self.startStripe = startStripe
        self.sizeBytes = sizeBytes
        self.thin = thin
    }
}
