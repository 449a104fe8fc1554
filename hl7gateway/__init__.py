"""HL7 v2 over MLLP: inbound message log, parsing, mapping to ris commands, ORU out."""
