"""What a generation is and what it records: the user's workload and the memory it needs
(`workload`), streaming (`streaming`) and chat turns (`chat`), statistics (`stats`), clocks
(`timing`), the step trace (`trace`), and the plan files autotune writes (`plan_file`).

May import: base, formats, policies.
"""
