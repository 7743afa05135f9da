/// Takes entry `entry` out of the hash chain that starts at `buckets[bucket]` and runs through `next` (-1 ends a
/// chain): the indexes of the cache's slots and of the pool map's frames are such chains over preallocated arrays.
/// Returns false when the entry is not in that chain.
@inlinable
public func unlinkFromChain(_ entry: Int, bucket: Int, buckets: inout [Int32], next: inout [Int32]) -> Bool {
    var previous: Int32 = -1
    var s = buckets[bucket]
    while s >= 0 {
        if Int(s) == entry {
            if previous < 0 { buckets[bucket] = next[entry] } else { next[Int(previous)] = next[entry] }
            next[entry] = -1
            return true
        }
        previous = s
        s = next[Int(s)]
    }
    return false
}
