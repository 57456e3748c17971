"""Column names and vocabularies shared by every table the project reads or writes.

The ``Metadata_*`` spellings are CellProfiler's / pycytominer's (and CPJUMP1's published profiles'), so tables from
either world join on them without renaming.
"""

META_PREFIX = "Metadata_"
PLATE = "Metadata_Plate"
WELL = "Metadata_Well"
SITE = "Metadata_Site"
BROAD = "Metadata_broad_sample"
PERT = "Metadata_pert_iname"
TARGET = "Metadata_target"
CELL_LINE = "Metadata_cell_line"
# Sites that contributed to a well (written by featurisers that average sites).
N_SITES = "Metadata_n_sites"
# Every well-level profile table carries these (DMSO wells have PERT == "DMSO" and an empty BROAD).
PROFILE_METADATA = (PLATE, WELL, BROAD, PERT, TARGET, CELL_LINE)
CONTROL_NAME = "DMSO"
# The two cell lines of the CPJUMP1 compound plates, in the challenge's train->test order.
CELL_LINES = ("U2OS", "A549")
