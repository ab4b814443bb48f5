(function(){
  const table=document.getElementById('findings'), body=table.tBodies[0];
  const numeric=v=>v!==''&&isFinite(Number(v));
  function compare(a,b){ // empty values last, numbers as numbers, text as text
    if(a===''||b==='') return (a==='')-(b==='');
    return numeric(a)&&numeric(b)?Number(a)-Number(b):a.localeCompare(b);}
  table.tHead.addEventListener('click',function(event){
    const th=event.target.closest('th[data-col]'); if(!th) return;
    const col=Number(th.dataset.col), descending=!th.classList.contains('desc');
    for(const other of table.tHead.querySelectorAll('th[data-col]')) other.classList.remove('asc','desc');
    th.classList.add(descending?'desc':'asc');
    const rows=Array.from(body.rows);
    rows.sort((r,s)=>{const a=r.cells[col].dataset.v,b=s.cells[col].dataset.v;
      const c=(a===''||b==='')?compare(a,b):(descending?compare(b,a):compare(a,b));
      return c||Number(r.cells[0].dataset.v)-Number(s.cells[0].dataset.v);});
    for(const row of rows) body.appendChild(row);});
  const text=document.getElementById('filter'), flaggedOnly=document.getElementById('flagged-only');
  function filter(){
    const words=text.value.toLowerCase(); let shown=0;
    for(const row of body.rows){
      const visible=(!flaggedOnly.checked||row.dataset.flagged==='1')&&row.textContent.toLowerCase().includes(words);
      row.hidden=!visible; shown+=visible;}
    document.getElementById('shown').textContent=shown+' of '+body.rows.length+' findings shown';}
  text.addEventListener('input',filter); flaggedOnly.addEventListener('change',filter); filter();

  // The review: one state per finding (photo x prompt), kept in localStorage under the report's identity
  // (its start time and model), so that a reload, or the same report opened again, finds it; the review the
  // page was rendered with (--rerender --review) is the starting point.
  const data=JSON.parse(document.getElementById('report-data').textContent);
  const column=Object.fromEntries(data.columns.map((name,i)=>[name,i]));
  const storeKey='clipseg-drywall-review:'+data.report;
  let saved={};
  try{saved=JSON.parse(localStorage.getItem(storeKey)||'{}');}catch(error){saved={};}
  const findingKey=i=>JSON.stringify([data.rows[i][column.photo],data.rows[i][column.prompt]]);
  const stateOf=i=>saved[findingKey(i)]||{review:data.rows[i][column.review],note:data.rows[i][column.note]};
  const reviewCell=row=>row.querySelector('button.accept').closest('td');
  function show(row){
    const state=stateOf(row.dataset.key), note=row.querySelector('input.note');
    row.dataset.review=state.review; reviewCell(row).dataset.v=state.review;
    if(note.value!==state.note) note.value=state.note;
    note.closest('td').dataset.v=state.note;}
  function counts(){
    const count={accepted:0,rejected:0,open:0};
    for(let i=0;i<data.rows.length;i++) count[stateOf(i).review]+=1;
    document.getElementById('review-counts').textContent=
      count.accepted+' accepted, '+count.rejected+' rejected, '+count.open+' open';}
  function update(row,change){
    saved[findingKey(row.dataset.key)]=Object.assign({},stateOf(row.dataset.key),change);
    try{localStorage.setItem(storeKey,JSON.stringify(saved));}
    catch(error){document.getElementById('review-counts').textContent='the browser does not keep this review: export it';}
    show(row); counts();}
  const toggle=(row,review)=>update(row,{review:stateOf(row.dataset.key).review===review?'open':review});
  for(const row of body.rows) show(row);
  counts();
  body.addEventListener('click',function(event){
    const button=event.target.closest('button'), row=event.target.closest('tr'); if(!row) return;
    select(row);
    if(button) toggle(row,button.classList.contains('accept')?'accepted':'rejected');});
  body.addEventListener('input',function(event){
    if(event.target.matches('input.note')) update(event.target.closest('tr'),{note:event.target.value});});

  let current=null;
  function select(row){
    if(current) current.classList.remove('current');
    current=row; row.classList.add('current'); row.scrollIntoView({block:'nearest'});}
  function step(by){
    const rows=Array.from(body.rows).filter(row=>!row.hidden); if(!rows.length) return;
    const at=rows.indexOf(current);
    select(rows[at<0?(by>0?0:rows.length-1):Math.min(rows.length-1,Math.max(0,at+by))]);}
  document.addEventListener('keydown',function(event){
    if(event.ctrlKey||event.metaKey||event.altKey) return;
    if(event.target.matches('input.note')){
      if(event.key==='Enter'||event.key==='Escape'){event.target.blur(); event.preventDefault();}
      return;}
    if(event.target.matches('input,textarea,select')) return;
    const actions={j:()=>step(1),ArrowDown:()=>step(1),k:()=>step(-1),ArrowUp:()=>step(-1),
      a:()=>current&&toggle(current,'accepted'),r:()=>current&&toggle(current,'rejected'),
      o:()=>current&&update(current,{review:'open'}),n:()=>current&&current.querySelector('input.note').focus()};
    if(actions[event.key]){actions[event.key](); event.preventDefault();}});

  // The punch list: findings.csv's columns, each row with the review and note of this browser.
  const csvField=value=>/[",\r\n]/.test(value)?'"'+value.replace(/"/g,'""')+'"':value;
  document.getElementById('export').addEventListener('click',function(){
    const lines=[data.columns.map(csvField).join(',')];
    data.rows.forEach((values,i)=>{
      const state=stateOf(i), row=values.slice();
      row[column.review]=state.review; row[column.note]=state.note;
      lines.push(row.map(csvField).join(','));});
    const link=document.createElement('a');
    link.href=URL.createObjectURL(new Blob([lines.join('\n')+'\n'],{type:'text/csv;charset=utf-8'}));
    link.download='punch-list.csv'; document.body.appendChild(link); link.click(); link.remove();});
})();
